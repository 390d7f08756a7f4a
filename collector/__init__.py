"""rayhistory.collector"""
