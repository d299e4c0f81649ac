#Requires -Version 5.1
#Requires -RunAsAdministrator
<#
.SYNOPSIS
    Define the 2 VMs of lab t on this Hyper-V host (written by vmbuild).

.DESCRIPTION
    Each VM is a generation 1 VM (the lab's golden image boots with BIOS) with static
    memory, its disk vms\<vm>\disk.vhdx on IDE 0:0 and first in the boot order, its
    NoCloud seed vms\<vm>\seed.iso in the DVD drive on IDE 1:0, one network adapter
    with the VM's own static MAC address on the virtual switch -SwitchName, and its
    serial console on COM1, the named pipe \\.\pipe\t-<vm>.

    The disks stay where they are: keep this folder where it is once the VMs are
    defined, on a local NTFS or ReFS volume. Running the script again updates the
    same VMs in place. It changes nothing when a VM of the lab is running, or when a
    VM of the same name exists that this lab did not define.

.PARAMETER SwitchName
    The virtual switch the VMs' network adapters are connected to. Made as a
    private switch (no uplink, no host adapter: the lab's isolated network) when this
    host has none of that name.

.PARAMETER Verify
    Check every file of this folder against SHA256SUMS first (it reads every disk).

.EXAMPLE
    powershell -ExecutionPolicy Bypass -File .\define.ps1
#>
[CmdletBinding()]
param(
    [string]$SwitchName = 'labnet',
    [switch]$Verify
)
Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'
Import-Module Hyper-V

$Lab = 't'
$Here = $PSScriptRoot
# Each VM: name, vCPUs, memory in bytes, static MAC, whether it starts with the host,
# and its notes, which begin with the mark that names it as this lab's VM.
$VMs = @(
    [pscustomobject]@{ Name = 'web'; Cpus = 2; Memory = 1073741824; Mac = '5254008EAE0E'; Autostart = $false; Mark = 'vmbuild lab t, VM web:'; Notes = 'vmbuild lab t, VM web: web.lab.example 192.0.2.10/24 (instance web-70df5368c1144afb)' }
    [pscustomobject]@{ Name = 'db'; Cpus = 2; Memory = 1073741824; Mac = '5254008E8E69'; Autostart = $false; Mark = 'vmbuild lab t, VM db:'; Notes = 'vmbuild lab t, VM db: db.lab.example 192.0.2.20/24 (instance db-45530123e9636a1d)' }
)

if ($Verify) {
    foreach ($line in Get-Content -LiteralPath (Join-Path $Here 'SHA256SUMS')) {
        $sum, $name = $line -split '  ', 2
        $found = (Get-FileHash -LiteralPath (Join-Path $Here $name) -Algorithm SHA256).Hash.ToLowerInvariant()
        if ($found -ne $sum) {
            throw "$name is not as exported (sha256 $found, SHA256SUMS says $sum)"
        }
    }
    Write-Host 'Every file matches SHA256SUMS'
}

# Refuse before changing anything: a VM of the same name that the lab did not
# define, or one of the lab's VMs that is not off.
$problems = @()
foreach ($spec in $VMs) {
    $found = @(Get-VM -Name $spec.Name -ErrorAction SilentlyContinue)
    if ($found.Count -eq 0) {
        continue
    }
    if ($found.Count -gt 1) {
        $problems += "there are $($found.Count) VMs named $($spec.Name)"
    } elseif (-not ([string]$found[0].Notes).StartsWith($spec.Mark, [StringComparison]::Ordinal)) {
        $problems += "VM $($spec.Name) exists and is not lab $Lab's; rename or remove it"
    } elseif ($found[0].State -ne 'Off') {
        $problems += "VM $($spec.Name) is $($found[0].State); shut it down first"
    }
}
if ($problems.Count -gt 0) {
    throw ($problems -join '; ')
}

if (-not (Get-VMSwitch -Name $SwitchName -ErrorAction SilentlyContinue)) {
    New-VMSwitch -Name $SwitchName -SwitchType Private | Out-Null
    Write-Host "Made the private switch $SwitchName"
}

foreach ($spec in $VMs) {
    $folder = Join-Path (Join-Path $Here 'vms') $spec.Name
    $disk = Join-Path $folder 'disk.vhdx'
    $seed = Join-Path $folder 'seed.iso'
    $vm = Get-VM -Name $spec.Name -ErrorAction SilentlyContinue
    if ($vm) {
        $done = 'Updated'
    } else {
        $vm = New-VM -Name $spec.Name -Generation 1 -MemoryStartupBytes $spec.Memory -NoVHD
        $done = 'Defined'
    }
    $start = if ($spec.Autostart) { 'Start' } else { 'Nothing' }
    Set-VM -VM $vm -ProcessorCount $spec.Cpus -StaticMemory -MemoryStartupBytes $spec.Memory `
        -AutomaticStartAction $start -AutomaticStopAction ShutDown -Notes $spec.Notes

    $drive = Get-VMHardDiskDrive -VM $vm -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0
    if ($drive) {
        Set-VMHardDiskDrive -VMHardDiskDrive $drive -Path $disk
    } else {
        Add-VMHardDiskDrive -VM $vm -ControllerType IDE -ControllerNumber 0 -ControllerLocation 0 -Path $disk
    }
    $dvd = Get-VMDvdDrive -VM $vm -ControllerNumber 1 -ControllerLocation 0
    if ($dvd) {
        Set-VMDvdDrive -VMDvdDrive $dvd -Path $seed
    } else {
        Add-VMDvdDrive -VM $vm -ControllerNumber 1 -ControllerLocation 0 -Path $seed
    }
    Set-VMBios -VM $vm -StartupOrder @('IDE', 'CD', 'LegacyNetworkAdapter', 'Floppy')

    $nics = @(Get-VMNetworkAdapter -VM $vm)
    if ($nics.Count -eq 0) {
        $nics = @(Add-VMNetworkAdapter -VM $vm -SwitchName $SwitchName -Passthru)
    }
    Connect-VMNetworkAdapter -VMNetworkAdapter $nics[0] -SwitchName $SwitchName
    Set-VMNetworkAdapter -VMNetworkAdapter $nics[0] -StaticMacAddress $spec.Mac

    Set-VMComPort -VM $vm -Number 1 -Path "\\.\pipe\$Lab-$($spec.Name)"
    Write-Host "$done $($spec.Name)"
}
