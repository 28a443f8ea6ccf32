class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description=""):
        self.name, self.default_value, self.description = name, default_value, description


class ExecuteProcess:
    def __init__(self, cmd, condition=None, **kwargs):
        self.cmd, self.condition, self.kwargs = cmd, condition, kwargs
