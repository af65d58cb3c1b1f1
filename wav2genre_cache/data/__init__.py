"""The labelled tracks of datasets: layouts, label maps, splits, duplicates."""
