"""Image view: picking a photo or uploading one, the top-5 predictions, the heat-map cards."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import expect

from pages.base import Workbench


class ImagePage:
    def __init__(self, bench: Workbench):
        self.bench = bench
        self.page = bench.page

    def pick(self, image_id: str) -> None:
        self.page.locator(f".thumb[data-image='{image_id}']").click()

    def upload(self, path: Path) -> None:
        self.page.locator(".drop input[type=file]").set_input_files(str(path))

    def predictions(self) -> list[tuple[int, str]]:
        """(class, label) of the top-5 buttons, best first."""
        buttons = self.page.locator(".prediction")
        expect(buttons.first).to_be_visible(timeout=30_000)
        return [
            (int(button.get_attribute("data-class")), button.inner_text().split("#")[0].strip())
            for button in buttons.all()
        ]

    def click_prediction(self, rank: int) -> None:
        self.page.locator(".prediction").nth(rank).click()

    def cards(self):
        return self.page.locator(".map-card")

    def wait_maps(self, timeout: float = 60_000) -> dict[str, str]:
        """Until every heat-map card has finished; {method: "done" | "failed"}."""
        expect(self.page.locator(".maps[data-pending='0']")).to_be_attached(timeout=timeout)
        return {
            card.get_attribute("data-method"): card.get_attribute("data-state") for card in self.cards().all()
        }

    def toggle_method(self, name: str) -> None:
        self.page.locator(f".chip[data-method='{name}']").click()

    def failures(self) -> list[str]:
        return self.page.locator(".failure").all_inner_texts()
