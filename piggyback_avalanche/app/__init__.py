"""The application: the benchmark runner (``piggyback-bench``), its report,
the offline demo (``piggyback-demo``), the backbones they build by name and
the paper's published figures. The library never imports this package."""
