"""The shell every view shares: opening a state, reading the state back from the URL, the view tabs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlparse

from playwright.sync_api import Page, expect


class Workbench:
    """The workbench page at `base` (the server's URL)."""

    def __init__(self, page: Page, base: str):
        self.page = page
        self.base = base
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def open(self, **state: str) -> Workbench:
        """Load the page with this URL state (model=..., view=..., ...) and wait for its view to mount."""
        query = urlencode(state)
        self.page.goto(f"{self.base}/{'?' + query if query else ''}")
        expect(self.page.locator("#view[data-view]")).to_be_attached()
        return self

    def state(self) -> dict[str, str]:
        """The state the URL holds now."""
        return dict(parse_qsl(urlparse(self.page.url).query))

    def view(self) -> str:
        return self.page.locator("#view").get_attribute("data-view") or ""

    def go_to(self, view: str) -> None:
        """Click a view's tab."""
        self.page.locator(f"#tabs a[data-view='{view}']").click()
        expect(self.page.locator(f"#view[data-view='{view}']")).to_be_attached()
