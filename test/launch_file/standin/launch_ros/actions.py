class Node:
    def __init__(self, condition=None, **kwargs):
        self.condition, self.kwargs = condition, kwargs
