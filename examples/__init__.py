"""Example projects: a user's own pipelines, trained and saved the way a data scientist would."""
