"""MQTT control plane and fleet (issue 7)"""
