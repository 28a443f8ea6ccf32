class LaunchConfiguration:
    def __init__(self, name):
        self.name = name


class PathJoinSubstitution:
    def __init__(self, parts):
        self.parts = list(parts)


class PythonExpression:
    def __init__(self, parts):
        self.parts = list(parts)
