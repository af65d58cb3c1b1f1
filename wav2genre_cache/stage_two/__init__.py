"""Stage two: train, select and compare heads on cached features."""
