"""Where the cluster runs: a new VPC (private subnets, S3 gateway endpoint) or an existing one, and its security groups."""

from __future__ import annotations

from typing import Optional, Sequence

from aws_cdk import Fn, RemovalPolicy, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

# The AmazonEMRServicePolicy_v2 managed policy lets EMR act only on subnets and security groups carrying this tag.
EMR_MANAGED_POLICY_TAG = ("for-use-with-amazon-emr-managed-policies", "true")
MAX_AZS = 2


class Network(Construct):
    """The cluster's subnets and the three security groups EMR manages the rules of (primary, workers, service access).

    Several subnets: EMR launches instance fleets in the one subnet (availability zone) where the fleets' instance
    types have capacity, so each subnet in another zone is one more chance at launch (a whole cluster still runs in one
    zone).

    Our own security groups instead of EMR's defaults: EMR creates its default groups outside CloudFormation, and they
    would be left behind by ``cdk destroy`` and block deleting the VPC.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc_id: Optional[str],
        subnet_ids: Optional[Sequence[str]],
        nat_gateways: int,
    ) -> None:
        super().__init__(scope, construct_id)
        if vpc_id is None:
            self.vpc: ec2.IVpc = self._new_vpc(nat_gateways)
            subnet_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED
            subnets = self.vpc.select_subnets(subnet_type=subnet_type).subnets
            for subnet in subnets:
                Tags.of(subnet).add(*EMR_MANAGED_POLICY_TAG)
            # Every private subnet, one per availability zone.
            self.subnet_ids: tuple[str, ...] = tuple(subnet.subnet_id for subnet in subnets)
        else:
            # No lookup: synth needs no AWS credentials. The subnets must carry EMR_MANAGED_POLICY_TAG (README).
            self.vpc = ec2.Vpc.from_vpc_attributes(self, "Vpc", vpc_id=vpc_id, availability_zones=Fn.get_azs())
            self.subnet_ids = tuple(subnet_ids)
        self.primary_security_group = self._security_group("PrimarySecurityGroup", "EMR primary node")
        self.worker_security_group = self._security_group("WorkerSecurityGroup", "EMR core and task nodes")
        self.service_access_security_group = self._security_group(
            "ServiceAccessSecurityGroup", "EMR service access to the nodes in a private subnet"
        )
        self.kms_endpoint: Optional[ec2.InterfaceVpcEndpoint] = None
        if vpc_id is None and not nat_gateways:
            self.kms_endpoint = self._kms_endpoint(subnets[0])

    def _new_vpc(self, nat_gateways: int) -> ec2.Vpc:
        private_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if nat_gateways else ec2.SubnetType.PRIVATE_ISOLATED
        subnet_configuration = [ec2.SubnetConfiguration(name="private", subnet_type=private_type, cidr_mask=20)]
        if nat_gateways:
            # Public subnets only hold the NAT gateways; no instance of this stack gets a public address.
            subnet_configuration.append(
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24)
            )
        vpc = ec2.Vpc(
            self,
            "Vpc",
            max_azs=MAX_AZS,
            nat_gateways=nat_gateways,
            subnet_configuration=subnet_configuration,
            # S3 traffic (inputs, models, results, logs) stays on the AWS network and costs no NAT processing.
            gateway_endpoints={"S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3)},
            restrict_default_security_group=True,
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                logs.LogGroup(
                    self,
                    "FlowLogGroup",
                    retention=logs.RetentionDays.ONE_MONTH,
                    removal_policy=RemovalPolicy.DESTROY,
                )
            ),
            traffic_type=ec2.FlowLogTrafficType.REJECT,
        )
        return vpc

    def _kms_endpoint(self, subnet: ec2.ISubnet) -> ec2.InterfaceVpcEndpoint:
        """Without NAT the nodes reach AWS only through VPC endpoints. S3 has its gateway endpoint; the only other
        service a node calls is KMS, at boot, for the data key of its encrypted local disks (security configuration).
        Private DNS makes kms.<region>.amazonaws.com resolve to the endpoint. One subnet: an interface endpoint bills
        per availability zone, and its address is reachable from every subnet of the VPC (the cluster may start in any
        of them), at the price of cross-zone traffic for a few key requests at boot."""
        endpoint = ec2.InterfaceVpcEndpoint(
            self,
            "KmsEndpoint",
            vpc=self.vpc,
            service=ec2.InterfaceVpcEndpointAwsService.KMS,
            subnets=ec2.SubnetSelection(subnets=[subnet]),
            private_dns_enabled=True,
            open=False,
        )
        # HTTPS from the cluster's nodes only.
        for group in (self.primary_security_group, self.worker_security_group):
            endpoint.connections.allow_from(group, ec2.Port.tcp(443), "KMS calls of the EMR nodes")
        return endpoint

    def _security_group(self, construct_id: str, description: str) -> ec2.SecurityGroup:
        group = ec2.SecurityGroup(self, construct_id, vpc=self.vpc, description=description, allow_all_outbound=True)
        Tags.of(group).add(*EMR_MANAGED_POLICY_TAG)
        return group
