"""The runtime in plain Python (no Thespian): a shard of sites and their asset actors, the
roll-up tree above the sites, and placement of sites on shards."""
