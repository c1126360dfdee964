"""Adapters for the seeds' frameworks: NetsPresso Trainer's ``model.losses`` lists."""
