"""The resource types of FHIR R4 (4.0.1, https://hl7.org/fhir/R4/resourcelist.html), STU3
(3.0.2) and DSTU2 (1.0.2), each version's own list.

SMART scopes name one of the R4 types (or ``*``); any other name is an unknown resource type.
"""

from __future__ import annotations

__all__ = ["DSTU2_RESOURCE_TYPES", "R4_RESOURCE_TYPES", "STU3_RESOURCE_TYPES"]

R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse
    AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement
    CarePlan CareTeam CatalogEntry ChargeItem ChargeItemDefinition Claim ClaimResponse
    ClinicalImpression CodeSystem Communication CommunicationRequest CompartmentDefinition
    Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest
    DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis
    Encounter Endpoint EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal
    GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
    ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice
    Library Linkage List Location Measure MeasureReport Media Medication MedicationAdministration
    MedicationDispense MedicationKnowledge MedicationRequest MedicationStatement MedicinalProduct
    MedicinalProductAuthorization MedicinalProductContraindication MedicinalProductIndication
    MedicinalProductIngredient MedicinalProductInteraction MedicinalProductManufactured
    MedicinalProductPackaged MedicinalProductPharmaceutical MedicinalProductUndesirableEffect
    MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation Person
    PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire
    QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition ResearchElementDefinition
    ResearchStudy ResearchSubject RiskAssessment RiskEvidenceSynthesis Schedule SearchParameter
    ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap Subscription
    Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein
    SubstanceReferenceInformation SubstanceSourceMaterial SubstanceSpecification SupplyDelivery
    SupplyRequest Task TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription
    """.split()  # noqa: SIM905 - a word list reads better than 146 quoted strings
)

STU3_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment
    AppointmentResponse AuditEvent Basic Binary BodySite Bundle CapabilityStatement CarePlan
    CareTeam ChargeItem Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent
    Contract Coverage DataElement DetectedIssue Device DeviceComponent DeviceMetric
    DeviceRequest DeviceUseStatement DiagnosticReport DocumentManifest DocumentReference
    EligibilityRequest EligibilityResponse Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare ExpansionProfile ExplanationOfBenefit
    FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService
    ImagingManifest ImagingStudy Immunization ImmunizationRecommendation ImplementationGuide
    Library Linkage List Location Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationRequest MedicationStatement
    MessageDefinition MessageHeader NamingSystem NutritionOrder Observation
    OperationDefinition OperationOutcome Organization Parameters Patient PaymentNotice
    PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
    ProcedureRequest ProcessRequest ProcessResponse Provenance Questionnaire
    QuestionnaireResponse ReferralRequest RelatedPerson RequestGroup ResearchStudy
    ResearchSubject RiskAssessment Schedule SearchParameter Sequence ServiceDefinition Slot
    Specimen StructureDefinition StructureMap Subscription Substance SupplyDelivery
    SupplyRequest Task TestReport TestScript ValueSet VisionPrescription
    """.split()  # noqa: SIM905
)

DSTU2_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic Binary
    BodySite Bundle CarePlan Claim ClaimResponse ClinicalImpression Communication
    CommunicationRequest Composition ConceptMap Condition Conformance Contract Coverage
    DataElement DetectedIssue Device DeviceComponent DeviceMetric DeviceUseRequest
    DeviceUseStatement DiagnosticOrder DiagnosticReport DocumentManifest DocumentReference
    EligibilityRequest EligibilityResponse Encounter EnrollmentRequest EnrollmentResponse
    EpisodeOfCare ExplanationOfBenefit FamilyMemberHistory Flag Goal Group HealthcareService
    ImagingObjectSelection ImagingStudy Immunization ImmunizationRecommendation
    ImplementationGuide List Location Media Medication MedicationAdministration
    MedicationDispense MedicationOrder MedicationStatement MessageHeader NamingSystem
    NutritionOrder Observation OperationDefinition OperationOutcome Order OrderResponse
    Organization Parameters Patient PaymentNotice PaymentReconciliation Person Practitioner
    Procedure ProcedureRequest ProcessRequest ProcessResponse Provenance Questionnaire
    QuestionnaireResponse ReferralRequest RelatedPerson RiskAssessment Schedule
    SearchParameter Slot Specimen StructureDefinition Subscription Substance SupplyDelivery
    SupplyRequest TestScript ValueSet VisionPrescription
    """.split()  # noqa: SIM905
)
