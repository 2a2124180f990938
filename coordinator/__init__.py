"""coordinator placeholder"""
