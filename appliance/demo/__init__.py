"""``omgw demo``: the gateway on simulated hardware, with a simulated CSMS and chargers."""
