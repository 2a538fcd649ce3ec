"""Architecture view: the graph's nodes, clicking one, expanding a block."""

from __future__ import annotations

from playwright.sync_api import expect

from pages.base import Workbench


class ArchitecturePage:
    def __init__(self, bench: Workbench):
        self.bench = bench
        self.page = bench.page

    def wait_drawn(self) -> ArchitecturePage:
        expect(self.page.locator(".graph-wrap[data-nodes] .graph-node").first).to_be_visible(timeout=30_000)
        return self

    def wait_colored(self) -> ArchitecturePage:
        """Until the nodes carry the current image's activation strength."""
        expect(self.page.locator(".graph-wrap[data-colored='true']")).to_be_attached(timeout=30_000)
        return self

    def layers(self) -> list[str]:
        return [
            name
            for name in self.page.locator(".graph-node").evaluate_all(
                "nodes => nodes.map(n => n.dataset.layer)"
            )
            if name
        ]

    def node_count(self) -> int:
        return int(self.page.locator(".graph-wrap").get_attribute("data-nodes"))

    def click_node(self, layer: str) -> None:
        self.page.locator(f".graph-node[data-layer='{layer}'] rect.box").click()

    def find(self, layer: str) -> None:
        """Type a layer's name in the search box: its blocks open and the view centers on it."""
        self.page.get_by_label("find a layer").fill(layer)
        self.page.get_by_label("find a layer").press("Enter")
        expect(self.page.locator(f".graph-node.selected[data-layer='{layer}']")).to_be_visible()

    def expand(self, block: str) -> None:
        self.page.locator(f".graph-node .toggle[data-expand='{block}']").click()

    # --- the neuron-clusters mode ---

    def show_clusters(self) -> ArchitecturePage:
        self.page.locator(".seg button[data-mode='clusters']").click()
        return self.wait_clusters()

    def wait_clusters(self) -> ArchitecturePage:
        expect(self.page.locator(".graph-wrap[data-clusters] .cluster-node").first).to_be_visible(
            timeout=60_000
        )
        return self

    def clusters(self) -> dict[str, int]:
        """Clusters drawn per layer."""
        found: dict[str, int] = {}
        for layer in self.page.locator(".cluster-node").evaluate_all(
            "nodes => nodes.map(n => n.dataset.layer)"
        ):
            found[layer] = found.get(layer, 0) + 1
        return found

    def cluster_edges(self) -> list[float]:
        return [
            float(w)
            for w in self.page.locator(".cluster-edge").evaluate_all(
                "paths => paths.map(p => p.dataset.weight)"
            )
        ]

    def click_cluster(self, layer: str, cluster: int) -> None:
        """Click a cluster's box on its title line (its samples open themselves)."""
        box = self.page.locator(f".cluster-node[data-layer='{layer}'][data-cluster='{cluster}'] rect.box")
        box.click(position={"x": 60, "y": 12})
