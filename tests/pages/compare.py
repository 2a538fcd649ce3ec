"""Compare view: two models layer by layer (CKA, sparsity bars, per-layer layouts, confusions)."""

from __future__ import annotations

from playwright.sync_api import expect

from pages.base import Workbench


class ComparePage:
    def __init__(self, bench: Workbench):
        self.bench = bench
        self.page = bench.page

    def wait_cka(self) -> ComparePage:
        expect(self.page.locator("canvas[aria-label='CKA matrix']")).to_be_visible(timeout=60_000)
        return self

    def sparsity(self, model: str) -> dict[str, float]:
        """{layer: sparsity} of one model's bars."""
        side = self.page.locator("section[aria-label='sparsity'] .sparsity-side").filter(
            has=self.page.locator(f"h3:text-is('{model}')")
        )
        expect(side.locator(".sparsity-row").first).to_be_visible(timeout=60_000)
        return {
            row.get_attribute("data-layer"): float(row.get_attribute("data-sparsity"))
            for row in side.locator(".sparsity-row").all()
        }

    def layouts(self, timeout: float = 180_000) -> dict[str, dict[str, int]]:
        """{model: {layer: points drawn}} once every layout is painted."""
        cells = self.page.locator("section[aria-label='layouts'] figure.layout-cell")
        expect(cells.first).to_be_visible(timeout=timeout)
        expect(self.page.locator("section[aria-label='layouts'] canvas:not([data-points])")).to_have_count(
            0, timeout=timeout
        )
        found: dict[str, dict[str, int]] = {}
        for cell in cells.all():
            points = int(cell.locator("canvas").get_attribute("data-points"))
            found.setdefault(cell.get_attribute("data-model"), {})[cell.get_attribute("data-layer")] = points
        return found
