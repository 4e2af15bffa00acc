"""VPS hosts and the machines on them: the ``VpsDriver`` interface and the ``nspawn``
driver (driver.py), the command runners that reach a VPS host (runner.py), the unit
managers (units.py) and the input checks (validate.py)."""
