"""Payment service: virtual-account bills and SNAP bank callbacks."""
