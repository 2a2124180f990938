"""worker placeholder"""
