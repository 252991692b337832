"""Network drivers: the kernel objects of each kind of network (see driver.NetworkDriver)."""
