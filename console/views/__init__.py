"""The console's views, one module per area. Every module here that defines
``register(admin)`` is registered by :func:`console.admin.init_app`, in the order of its
``MENU_ORDER`` (lower first), so adding an area touches no other module."""
