"""Layer view: the activation grid (one tile per channel), the selected unit, filters and statistics."""

from __future__ import annotations

from playwright.sync_api import expect

from pages.base import Workbench


class LayerPage:
    def __init__(self, bench: Workbench):
        self.bench = bench
        self.page = bench.page

    def grid(self):
        return self.page.locator("canvas[aria-label='activation grid']")

    def wait_grid(self) -> LayerPage:
        expect(self.grid()).to_be_visible(timeout=30_000)
        return self

    def units_in_grid(self) -> int:
        return int(self.grid().get_attribute("data-units"))

    def title(self) -> str:
        return self.page.locator(".title-row h1").inner_text()

    def click_tile(self, position: int) -> None:
        """Click the `position`-th tile of the grid (in its current order)."""
        box = self.grid().bounding_box()
        tile = float(self.grid().get_attribute("data-tile"))
        columns = int(self.grid().get_attribute("data-columns"))
        gap = 2
        x = (position % columns) * (tile + gap) + tile / 2
        y = (position // columns) * (tile + gap) + tile / 2
        self.page.mouse.click(box["x"] + x, box["y"] + y)

    def selected_unit_title(self) -> str:
        return self.page.locator("section[aria-label='selected unit'] h2").inner_text()
