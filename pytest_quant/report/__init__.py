"""What a session reports: properties of each test (junit, xdist), the rows and the summary table, and the
``--quant-report`` files with their plot."""
