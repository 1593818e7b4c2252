"""The ``lvseg`` command (``lvseg/cli.py``): one entry point for data, the pipeline, its report,
serving, monitoring and Kubeflow."""
