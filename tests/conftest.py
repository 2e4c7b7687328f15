"""Test configuration: real PostgreSQL and a real Mosquitto, addresses from the environment."""

pytest_plugins = ["tests.fix_db", "tests.fix_mqtt", "tests.fix_bridge", "tests.fix_proxy"]
