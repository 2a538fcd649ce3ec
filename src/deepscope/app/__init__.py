"""What a person runs, above the library: the ``deepscope`` command and the demo and report pages (and, next, the
workbench server). The library layers never import this package."""
