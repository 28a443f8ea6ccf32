"""Command-line tools: KITTI to bag, bag replay with /clock, evaluation, demo, benchmark."""
