"""People working on cases: requests, scheduling, reports, rooms."""
