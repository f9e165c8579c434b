pytest_plugins = ["emeterai_shared.testing.fixtures"]
