"""The run report (``lvseg report``) and the model card; see :mod:`report.report`."""
