class FindPackageShare:
    def __init__(self, package):
        self.package = package
