from airies.core.database import Database, create_db_engine, get_database

__all__ = ["Database", "create_db_engine", "get_database"]
