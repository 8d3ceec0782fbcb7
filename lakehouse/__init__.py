"""lakeforge's lakehouse core: config, Spark session, table registry, sources, quality."""

__version__ = "0.1.0"
