"""Dataset view: the scatter (hover, lasso), the selection grid, the confusion matrix."""

from __future__ import annotations

from playwright.sync_api import expect

from pages.base import Workbench


class DatasetPage:
    def __init__(self, bench: Workbench):
        self.bench = bench
        self.page = bench.page

    def scatter(self):
        return self.page.locator(".scatter-box canvas")

    def wait_scatter(self, timeout: float = 120_000) -> DatasetPage:
        expect(self.page.locator(".dataset-layout[data-drawn='true']")).to_be_attached(timeout=timeout)
        return self

    def screen_of(self, gl_x: float, gl_y: float) -> tuple[float, float]:
        """Page coordinates of a point at normalized layout position (gl_x, gl_y) in [-1, 1], under the
        scatter's first view: the layout's longer side spans the canvas's shorter one, centered."""
        box = self.scatter().bounding_box()
        half = min(box["width"], box["height"]) / 2
        return (
            float(box["x"] + box["width"] / 2 + gl_x * half),
            float(box["y"] + box["height"] / 2 - gl_y * half),
        )

    def hover(self, x: float, y: float) -> str:
        """Move the mouse to (x, y) and return the hover card's text ('' when no point is there)."""
        self.page.mouse.move(x, y)
        card = self.page.locator(".hover-card")
        try:
            expect(card).to_be_visible(timeout=3_000)
        except AssertionError:
            return ""
        return card.inner_text()

    def lasso(self, polygon: list[tuple[float, float]]) -> None:
        """Draw a lasso through page coordinates with the Lasso tool."""
        self.page.get_by_role("button", name="Lasso").click()
        self.page.mouse.move(*polygon[0])
        self.page.mouse.down()
        for x, y in [*polygon[1:], polygon[0]]:
            # in small steps with pauses, as a hand draws: the plot keeps a lasso point at most every few ms
            self.page.mouse.move(x, y, steps=12)
            self.page.wait_for_timeout(30)
        self.page.mouse.up()

    def selected(self, count: int | None = None) -> list[int]:
        """The dataset indices shown in the selection grid (waiting for `count` of them when given)."""
        grid = self.page.locator("section[aria-label='selection'] .sample")
        if count is not None:
            expect(
                self.page.locator(f"section[aria-label='selection'][data-count='{count}']")
            ).to_be_attached()
        else:
            expect(grid.first).to_be_visible()
        return sorted(int(index) for index in grid.evaluate_all("nodes => nodes.map(n => n.dataset.index)"))

    def selection_count(self) -> int:
        return int(self.page.locator("section[aria-label='selection']").get_attribute("data-count") or 0)

    def click_cell(self, label: int, prediction: int) -> None:
        self.page.locator(f".matrix .cell[data-label='{label}'][data-prediction='{prediction}']").click()
