<?php
// Runs Moodle's own CLI installer with the admin password read from the one-off container's
// secret file, so it never appears in a process list or an environment
// (install_database.php only takes it as an option: it gets it inside this process).
$password = rtrim((string) @file_get_contents('/run/kit/install/admin_password'), "\r\n");
if ($password === '') {
    fwrite(STDERR, "kit: /run/kit/install/admin_password is missing\n");
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
