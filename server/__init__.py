"""rayhistory.server"""
