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

    # --- the panels of what the layer learned over the dataset ---

    def panel(self, name: str):
        """A panel by its aria label: 'class selectivity', 'visual concepts', 'decoder inversion', 'filters'."""
        return self.page.locator(f"section[aria-label='{name}']")

    def weight_images(self) -> int:
        """How many weight images the filters panel draws (a first Linear layer)."""
        canvas = self.panel("filters").locator("canvas[data-weight-images]")
        expect(canvas).to_be_visible(timeout=30_000)
        return int(canvas.get_attribute("data-weight-images"))

    def selectivity_counts(self) -> dict[str, int]:
        """The layer summary the selectivity panel shows: units responding to one class only, to every class."""
        panel = self.panel("class selectivity")
        expect(panel.locator("[data-one-class]")).to_be_visible(timeout=30_000)
        return {
            "one_class": int(panel.locator("[data-one-class]").get_attribute("data-one-class")),
            "all_classes": int(panel.locator("[data-all-classes]").get_attribute("data-all-classes")),
        }

    def class_histograms(self, unit: int) -> tuple[int, int]:
        """(classes drawn, the class marked as preferred) of the unit's histograms."""
        rows = self.panel("class selectivity").locator(f".class-rows[data-unit='{unit}'] .class-row")
        expect(rows.first).to_be_visible(timeout=30_000)
        preferred = self.panel("class selectivity").locator(".class-row[aria-current='true']")
        return rows.count(), int(preferred.get_attribute("data-class"))

    def find_concepts(self, timeout: float = 180_000) -> list[dict]:
        """Start the concepts job when none is kept, wait for them; each concept's index and patch count."""
        panel = self.panel("visual concepts")
        start = panel.get_by_role("button", name="Find concepts")
        expect(panel.locator(".concepts").or_(start)).to_be_visible(timeout=30_000)
        if start.is_visible():
            start.click()
        expect(panel.locator(".concepts")).to_be_visible(timeout=timeout)
        return [
            {"index": int(c.get_attribute("data-index")), "patches": c.locator("img").count()}
            for c in panel.locator(".concept").all()
        ]

    def train_decoder(self, epochs: int, timeout: float = 180_000) -> str:
        """Train the layer's decoder; the caption of the current image's decoded figure."""
        panel = self.panel("decoder inversion")
        panel.get_by_label("decoder epochs").select_option(str(epochs))
        panel.get_by_role("button", name="Train a decoder").click()
        decoded = panel.locator("figure[data-kind='decoded']")
        expect(decoded.locator("img")).to_be_visible(timeout=timeout)
        return decoded.locator("figcaption").inner_text()

    def compare_with_optimization(self, steps: int, timeout: float = 180_000) -> str:
        panel = self.panel("decoder inversion")
        panel.get_by_label("optimization steps").select_option(str(steps))
        panel.get_by_role("button", name="Compare with optimization").click()
        optimized = panel.locator("figure[data-kind='optimized']")
        expect(optimized.locator("img")).to_be_visible(timeout=timeout)
        return optimized.locator("figcaption").inner_text()
