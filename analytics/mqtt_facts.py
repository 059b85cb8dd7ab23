"""The analytics app's answers to MQTT access (``accounts.mqtt_facts.CalculatorOwners``): which
account owns which calculator, read from the datacenters of the regions asked about (a calculator
lives in its account's datacenter). ``AnalyticsConfig.ready`` installs them."""

from __future__ import annotations

from django.conf import settings

from analytics.models import Calculator


class CalculatorOwnersInDatacenters:
    """``accounts.mqtt_facts.CalculatorOwners`` read from each datacenter of the regions."""

    def owners_by_id(self, *, regions: list[str], calc_ids: list[int]) -> dict[int, int]:
        found: dict[int, int] = {}
        for datacenter in settings.TOPOLOGY.datacenters:
            if datacenter.region not in regions or len(found) == len(calc_ids):
                continue
            wanted = [calc for calc in calc_ids if calc not in found]
            found.update(
                Calculator.objects.using(datacenter.alias).filter(pk__in=wanted).values_list("pk", "account_id")
            )
        return found


CALCULATOR_OWNERS = CalculatorOwnersInDatacenters()
