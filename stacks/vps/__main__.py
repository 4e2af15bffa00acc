"""The VPS stack: configuration only. Every value comes from the stack's config
(``pulumi config set vps:plan vps-m`` ...; the provisioner's Pulumi driver sets them
through the Automation API); the component (``vps.py``) does the rest."""

import pulumi
from vps import Vps, VpsArgs

machine = Vps("vps", VpsArgs.from_config(pulumi.Config("vps")))
pulumi.export("vm_id", machine.vm_id)
pulumi.export("address", machine.address)
pulumi.export("disk_gb", machine.disk_gb)
pulumi.export("tags", machine.tags)
