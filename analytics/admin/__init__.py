"""Admin of calculators, assignments and stored intervals (docs/admin.md), by subject:

- ``calculators``: the calculator list and form (the configuration as one JSON object);
- ``try_it``: "try it" on a calculator's page, validated as the API's on-demand calculation;
- ``assignments``: the assignment list and form, the actions, the fleet status page;
- ``pictures``: the timeline of a device's intervals and one interval's route (an assignment's page);
- ``intervals``: the page of an assignment's stored intervals;
- ``geofences``: the geofence list and page, their zones on a map;
- ``groups``: the list of groups of devices and a group's page, with members and calculators;
- ``common``: the JSON answers of the pages' endpoints, in the API's envelope.

Every write goes through ``analytics.services``; the pages read one datacenter database at a
time (``accounts.regional_admin``). Django's autodiscovery imports this package, which registers
the admin of each model by importing its module.
"""

from analytics.admin import assignments, calculators, geofences, groups

__all__ = ["assignments", "calculators", "geofences", "groups"]
