"""Stand-in of `launch` for tests (records what the launch file builds)."""


class LaunchDescription:
    def __init__(self, entities=()):
        self.entities = list(entities)
