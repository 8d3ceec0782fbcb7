"""spark-submit entry points; each parses arguments and calls one library function."""
