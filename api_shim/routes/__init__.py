"""The shim's routes by area: leases, pools, operations and the dashboard."""
