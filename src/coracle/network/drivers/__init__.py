"""Network drivers: the kernel side of each kind of network (see network/driver.py for the contract)."""
