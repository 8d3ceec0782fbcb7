"""Model families, the Horovod-on-Spark training runner and the model store."""
