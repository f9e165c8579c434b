pytest_plugins = ["emeterai_testkit.fixtures"]
