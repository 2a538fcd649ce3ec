"""The sections of the demo page and the report pages, each built from library calls and ``deepscope.render``."""
