class ParameterValue:
    def __init__(self, value, value_type=None):
        self.value, self.value_type = value, value_type
