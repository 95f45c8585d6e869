<?php
// Runs Moodle's own CLI installer with the admin password taken from the environment,
// so it never appears in a process list (install_database.php only takes it as an option).
$password = getenv('KIT_ADMIN_PASSWORD');
if ($password === false || $password === '') {
    fwrite(STDERR, "kit: KIT_ADMIN_PASSWORD is not set\n");
    exit(2);
}
$_SERVER['argv'] = [
    'install_database.php',
    '--agree-license',
    '--lang=en',
    '--adminuser=' . getenv('KIT_ADMIN_USER'),
    '--adminpass=' . $password,
    '--adminemail=' . getenv('KIT_ADMIN_EMAIL'),
    '--fullname=' . getenv('KIT_SITE_FULLNAME'),
    '--shortname=' . getenv('KIT_SITE_SHORTNAME'),
    '--supportemail=' . getenv('KIT_ADMIN_EMAIL'),
];
$_SERVER['argc'] = count($_SERVER['argv']);
chdir('/var/www/moodle/admin/cli');
require '/var/www/moodle/admin/cli/install_database.php';
