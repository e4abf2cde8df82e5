"""The Ray Serve application: `clare_dist`'s screening stages behind one HTTP API."""
