"""MQTT side of Qnect: bridge workers, topics, downlink publishing."""
