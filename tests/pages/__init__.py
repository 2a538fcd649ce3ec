"""Page objects of the workbench, one per view, for the browser tests and the screenshot script.

Each wraps a Playwright page and speaks in the view's terms (click a graph node, lasso points, pick a photo);
the markup they rely on (data-* attributes, aria labels) is the page's public face for tests.
"""
